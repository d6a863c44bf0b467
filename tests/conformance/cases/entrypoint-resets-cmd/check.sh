# ENTRYPOINT clears a CMD inherited from the parent stage (BuildKit).
expect_config .config.Cmd null
expect_config .config.Entrypoint '["/bin/true"]'

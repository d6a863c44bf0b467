# A CMD from the same stage survives ENTRYPOINT (BuildKit).
expect_config .config.Cmd '["same-stage"]'

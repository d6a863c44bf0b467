expect_config .config.OnBuild '["RUN echo later"]'

expect_content sock /run/buildkit/ssh_agent.0
expect_content state absent
expect_content sock2 /agent.sock
expect_absent run/buildkit
expect_absent agent.sock

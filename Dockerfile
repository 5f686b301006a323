# The default Claude Code agent image for krbottle users: Debian, Node.js, git, curl, the CA
# tools, and Claude Code itself (npm), run as user `node` (uid 1000).
#
#   docker build -t krbottle/claude-code .        # needs the internet: Debian's archive, npm
#
# then in krbottle.toml:
#
#   [agents.claude]
#   image = "krbottle/claude-code"
#   bottle = "dev"
#
# krbottle provisions the rest into each bottle before boot: the bottle CA in the trust bundle
# (NODE_EXTRA_CA_CERTS points at it), ~/.claude.json with onboarding done and the workdir
# trusted, the proxy (HTTPS_PROXY), a placeholder key (the gateway injects the real one).
# This project's CI cannot build it (no registry, no npm here); the offline example agent in
# examples/agent is what the tests use.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl git less nodejs npm openssh-client procps ripgrep \
 && rm -rf /var/lib/apt/lists/*
RUN npm install -g @anthropic-ai/claude-code \
 && npm cache clean --force
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash node \
 && mkdir -p /home/node/work \
 && chown node:node /home/node/work
USER node
WORKDIR /home/node/work
CMD ["claude"]

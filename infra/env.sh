#!/usr/bin/env bash
# Runs a command with the project's environment: the process env wins, then `.env`, then the
# local-stack defaults of `.env.example` (infra/lib.sh). Usage: infra/env.sh CMD [ARGS...]
# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$@"

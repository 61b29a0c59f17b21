#!/bin/bash
set -euo pipefail
# Wait up to 10 minutes for the driver when one is installed.
if [ -n "$(ls -A "$NV_DRIVER" 2>/dev/null)" ]; then
  for _ in $(seq 10); do nvidia-smi >/dev/null 2>&1 && break; sleep 60; done
fi
mkdir -p /jobstatus && touch /jobstatus/jobok
exec yarn nodemanager

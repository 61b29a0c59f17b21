#!/bin/bash
set -euo pipefail
mkdir -p /jobstatus && touch /jobstatus/jobok
exec yarn resourcemanager

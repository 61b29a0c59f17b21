#!/bin/bash
set -euo pipefail
mkdir -p /jobstatus && touch /jobstatus/jobok
exec hdfs datanode

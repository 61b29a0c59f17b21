#!/bin/bash
# Format the name directory only when it is empty, then run the NameNode in the foreground.
set -euo pipefail
if [ -z "$(ls -A /var/lib/hdfs/name 2>/dev/null)" ]; then
  hdfs namenode -format -nonInteractive
fi
mkdir -p /jobstatus && touch /jobstatus/jobok
exec hdfs namenode

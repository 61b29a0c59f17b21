#!/bin/bash
# Copy the configuration into HADOOP_CONF_DIR and fill the placeholders from the environment.
set -euo pipefail
cp /hadoop-configuration/*.xml "$HADOOP_CONF_DIR"/
sed -i -e "s/{RESOURCEMANAGER_ADDRESS}/${RESOURCEMANAGER_ADDRESS}/g" \
  -e "s/{ZOOKEEPER_QUORUM}/${ZOOKEEPER_QUORUM}/g" -e "s/{HDFS_ADDRESS}/${HDFS_ADDRESS}/g" \
  -e "s/{LOGSERVER_ADDRESS}/${LOGSERVER_ADDRESS}/g" \
  -e "s/{TIMELINE_SERVER_ADDRESS}/${TIMELINE_SERVER_ADDRESS}/g" "$HADOOP_CONF_DIR"/*.xml

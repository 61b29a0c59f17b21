#!/bin/bash
# Copy the configuration into HADOOP_CONF_DIR and fill the placeholders from the environment.
set -euo pipefail
cp /hadoop-configuration/*.xml "$HADOOP_CONF_DIR"/
sed -i "s/{HDFS_ADDRESS}/${HDFS_ADDRESS}/g" "$HADOOP_CONF_DIR"/*.xml

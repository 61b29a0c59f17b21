#!/bin/bash
# Copy the configuration into HADOOP_CONF_DIR and fill the placeholders from the environment.
set -euo pipefail
cp /hadoop-configuration/*.xml "$HADOOP_CONF_DIR"/
sed -i -e "s/{HDFS_ADDRESS}/${HDFS_ADDRESS}/g" -e "s/{POD_IP}/${POD_IP}/g" \
  -e "s#{HADOOP_DATANODE_DATA_DIR}#${HADOOP_DATANODE_DATA_DIR}#g" "$HADOOP_CONF_DIR"/*.xml

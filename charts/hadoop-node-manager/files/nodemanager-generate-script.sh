#!/bin/bash
# Fill yarn-site.xml: memory offered to YARN = whole GiB of host RAM * 1024 - RESERVED_MEMORY_MB.
set -euo pipefail
cp /hadoop-configuration/*.xml "$HADOOP_CONF_DIR"/
mem_total_gib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 1024 ))
mem_total=$(( mem_total_gib * 1024 - RESERVED_MEMORY_MB ))
if [ "$mem_total" -le 0 ]; then
  echo "host has ${mem_total_gib} GiB; reserving ${RESERVED_MEMORY_MB} MB leaves ${mem_total} MB for YARN" >&2
  exit 1
fi
cpu_vcores=$(grep -c ^processor /proc/cpuinfo)
sed -i -e "s/{mem_total}/${mem_total}/g" -e "s/{cpu_vcores}/${cpu_vcores}/g" \
  -e "s/{POD_IP}/${POD_IP}/g" -e "s/{RESOURCEMANAGER_ADDRESS}/${RESOURCEMANAGER_ADDRESS}/g" \
  -e "s/{ZOOKEEPER_QUORUM}/${ZOOKEEPER_QUORUM}/g" -e "s/{HDFS_ADDRESS}/${HDFS_ADDRESS}/g" \
  -e "s/{LOGSERVER_ADDRESS}/${LOGSERVER_ADDRESS}/g" \
  -e "s/{TIMELINE_SERVER_ADDRESS}/${TIMELINE_SERVER_ADDRESS}/g" \
  -e "s#{HOST_YARN_NODEMANAGER_STORAGE}#${HOST_YARN_NODEMANAGER_STORAGE}#g" \
  -e "s#{HOST_HADOOP_TMP_STORAGE}#${HOST_HADOOP_TMP_STORAGE}#g" \
  -e "s#{CURRENT_IMAGE_NAME}#${CURRENT_IMAGE_NAME}#g" "$HADOOP_CONF_DIR"/*.xml
rm -rf /hadoop-configuration-for-jobs/* && cp -r "$HADOOP_CONF_DIR"/. /hadoop-configuration-for-jobs/

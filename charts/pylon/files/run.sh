#!/bin/bash
# nginx.conf is rendered by pailot; run nginx in the foreground.
set -euo pipefail
cp /pylon-config/nginx.conf /etc/nginx/nginx.conf
exec nginx -g 'daemon off;'

#!/bin/sh
# What docker-compose.yml relies on from the official image's entrypoint: arguments that start with "-" go to
# redis-server; protected mode is off (other containers connect without a password, on the stack's own network);
# the server runs as the redis user and keeps its files in /data.
set -eu
if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"  # later arguments win, so a command can turn it back on
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis:redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"

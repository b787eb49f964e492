# Stand-in for postgres:15: Debian's PostgreSQL 15, with the official image's start-up for what
# docker-compose.yml uses: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, the data in PGDATA, pg_isready.
FROM vdc-standin/debian:bookworm
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# A fast shutdown, as in the official image: open transactions are rolled back, nothing committed is lost.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]

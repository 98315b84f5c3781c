# PostgreSQL helpers for the bench scripts (sourced by benches/run.sh and
# benches/cluster.sh): each run gets a database of its own on the server at
# CHAT_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres;
# the role must be allowed to create databases).
PG_URL=${CHAT_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# The URL of another database on the same PostgreSQL server.
pg_db_url() { # name
    local base=${PG_URL%%\?*} query=""
    [ "$base" != "$PG_URL" ] && query="?${PG_URL#*\?}"
    echo "${base%/*}/$1$query"
}
# Drops a database if it exists, even with sessions still on it.
pg_drop_db() { # name
    PGOPTIONS="-c client_min_messages=warning" psql "$PG_URL" -qAtX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
}
# Drops and creates a database, so that each run starts empty.
pg_fresh_db() { # name
    pg_drop_db "$1"
    psql "$PG_URL" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $1" >/dev/null
}

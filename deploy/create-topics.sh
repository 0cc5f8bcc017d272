#!/usr/bin/env bash
# Creates pushrelay's topics on a Kafka cluster with Apache Kafka's kafka-topics.sh.
# Environment: KAFKA_BIN (folder of kafka-topics.sh), BOOTSTRAP, PARTITIONS (default 12),
# REPLICATION (default 3), PREFIX (default "pushrelay."), TOKEN_RETENTION_MS (default 6 h),
# COMMAND_CONFIG (optional client properties file for SASL/TLS).
set -euo pipefail
: "${BOOTSTRAP:?set BOOTSTRAP to the bootstrap servers of the cluster}"
KAFKA_BIN=${KAFKA_BIN:-/opt/kafka/bin}
PARTITIONS=${PARTITIONS:-12}
REPLICATION=${REPLICATION:-3}
PREFIX=${PREFIX:-pushrelay.}
TOKEN_RETENTION_MS=${TOKEN_RETENTION_MS:-21600000}
extra=()
if [ -n "${COMMAND_CONFIG:-}" ]; then
  extra=(--command-config "$COMMAND_CONFIG")
fi

create() {
  local name=$1
  shift
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" "${extra[@]}" --create \
    --if-not-exists --topic "$PREFIX$name" --partitions "$PARTITIONS" \
    --replication-factor "$REPLICATION" "$@"
}

# Token-carrying topics: short retention (tokens live at most 24 h).
create mailbox-changes --config "retention.ms=$TOKEN_RETENTION_MS"
create subscription-changes --config "retention.ms=$TOKEN_RETENTION_MS"
# Compacted state: latest value per key.
create unread-counts --config cleanup.policy=compact
create subscriptions --config cleanup.policy=compact
create tenants --config cleanup.policy=compact
# Streams.
create push-requests
create delivery-receipts
create dead-letters
create tenant-feedback

#!/usr/bin/env python3
"""The tests' own Kafka client (kafka-python): an implementation independent
of the librdkafka the fraud ingest uses, run out of process.

  kafka_client.py create BROKER TOPIC PARTITIONS
  kafka_client.py produce BROKER TOPIC            (stdin: a JSON list of payload strings)
  kafka_client.py consume BROKER TOPIC GROUP SECONDS
                                                  (stdout: JSON lines {"key","value"}: every
                                                   partition from its start to its current end)
  kafka_client.py committed BROKER GROUP TOPIC    (stdout: the sum of committed offsets)
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def main(argv):
    cmd, broker = argv[1], argv[2]
    if cmd == "create":
        admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(argv[3], int(argv[4]), 1)])
        except TopicAlreadyExistsError:
            pass
        admin.close()
    elif cmd == "produce":
        p = KafkaProducer(bootstrap_servers=broker, acks="all")
        for payload in json.load(sys.stdin):
            p.send(argv[3], value=payload.encode()).get(timeout=10)
        p.flush()
        p.close()
    elif cmd == "consume":
        # Every partition from its beginning, without a group (no join or
        # rebalance to wait for); GROUP is kept for the command line's shape.
        c = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        deadline = time.time() + float(argv[5])
        parts = None
        while parts is None and time.time() < deadline:
            parts = c.partitions_for_topic(argv[3])
            if parts is None:
                time.sleep(0.2)
        tps = [TopicPartition(argv[3], p) for p in sorted(parts or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps) if tps else {}
        while time.time() < deadline:
            batch = c.poll(timeout_ms=500)
            for records in batch.values():
                for m in records:
                    print(json.dumps({"key": (m.key or b"").decode(errors="replace"),
                                      "value": (m.value or b"").decode(errors="replace")}), flush=True)
            if tps and all(c.position(tp) >= ends.get(tp, 0) for tp in tps):
                break
        c.close()
    elif cmd == "committed":
        c = KafkaConsumer(bootstrap_servers=broker, group_id=argv[3], enable_auto_commit=False)
        parts = c.partitions_for_topic(argv[4]) or set()
        total = 0
        for p in parts:
            o = c.committed(TopicPartition(argv[4], p))
            total += o or 0
        print(total)
        c.close()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)

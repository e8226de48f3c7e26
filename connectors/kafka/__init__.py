"""Kafka input and output over confluent-kafka: ``config`` (librdkafka settings from ``CX_KAFKA_*``), ``errors``
(classified by librdkafka error code), ``admin`` (broker wait, topics), ``source`` (``KafkaRawSource``), ``writer``
(``KafkaJsonWriter``) and ``produce`` (``moments produce``)."""

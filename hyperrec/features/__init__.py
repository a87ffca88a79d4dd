"""Features: their definitions (views), the Feast store, the windowed folds over the event
stream, the stream processor (SQLite log or Kafka) and the fast online-store reader."""

"""KServe model server: request/response schemas, the recommender Model, the entry point."""

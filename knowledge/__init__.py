"""The knowledge base: load documents, chunk them, embed them, store and search them in Qdrant."""

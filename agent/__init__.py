"""The answer path: a LangGraph graph from question to grounded, cited answer (issue 3)."""

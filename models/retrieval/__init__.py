"""Candidate retrieval for /recommend: building the index from accepted events and looking candidates up."""

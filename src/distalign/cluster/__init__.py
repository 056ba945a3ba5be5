"""Cluster plumbing: the Hugging Face cache and offline mode of every job, and the login-node prefetch."""

"""Ray Serve: HTTP ingress, embedding and generation deployments, schema, multiplexing."""

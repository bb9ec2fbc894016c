"""OCI images of OTP releases: build, lay out, push and pull; the registry server."""

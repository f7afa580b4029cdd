"""The artifact store: versioned stage outputs, manifests, fingerprints, locks, verify and gc."""

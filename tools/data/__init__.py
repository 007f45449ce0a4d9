"""Data tools behind `sawt data`: TFRecord to ArrayRecord conversion, inspection, the synthetic corpus, manifests."""

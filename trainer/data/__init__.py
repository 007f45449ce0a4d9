"""Host-side data: Example/TFRecord codecs, audio features, tokenisation and the Grain loader (numpy only)."""

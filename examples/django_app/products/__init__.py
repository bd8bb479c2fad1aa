"""The products app: a catalogue, and batches that render its products with batchkit."""

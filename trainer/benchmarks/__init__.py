"""End-to-end benchmarks on public data (`edge-trainer benchmark cmapss|skab`)."""

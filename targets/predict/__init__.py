"""Phone and NPU latency without a phone (issue 17): public on-device measurements to learn from."""

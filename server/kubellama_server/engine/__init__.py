"""The inference engine: request parameters, slots, sampling and the continuous-batching scheduler."""

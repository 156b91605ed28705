"""The inference engine: request preparation, the step planner, executor and result handling of the continuous-batching scheduler, slots and runs, sampling."""

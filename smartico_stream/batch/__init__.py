"""A batch's life: the checkpoint that owns it, who owns its partitions, the cached user states it
reads and advances, and the observers that hear what became of it."""

"""Where stage outputs live: content-addressed keys, and work folders written atomically."""


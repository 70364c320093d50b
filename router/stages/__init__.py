"""Ray Data stages: the callable classes the job maps over the prompts (read, encode, route,
generate on started engines). Each is a plain class with Arrow batches in and out."""

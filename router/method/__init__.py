"""InferenceDynamics, the routing method: the taxonomy, profiles and scoring (numpy), the
annotators, fitting profiles from evaluation tables, reading those tables, grading answers and
evaluating a router on held-out data."""

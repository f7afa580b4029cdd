"""The four seed systems as recipes: typed configs, networks, train steps, stage graphs."""

"""The four seed systems as recipes: typed configs, networks, train steps, which stages they use."""

raise ImportError("recipes/ holds scripts to run, not a package to import: westkit never imports a recipe")

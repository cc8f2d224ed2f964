from edge_export.export import main

main()

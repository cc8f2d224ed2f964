from edge_runtime.app import main

main()

from watcherd.cli import main

main()

from securetrain.cli.app import main

main()

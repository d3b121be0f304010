from envdoctor.cli import run

run()

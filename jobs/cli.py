def main():
    print("omnipersona")

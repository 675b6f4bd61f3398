print("kd")

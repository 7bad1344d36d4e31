"""placeholder until the teacher-student mode lands"""

"""AdaGC, a reconstruction completed with AIO2's trigger: loss, curve, detection, rollback, switch, teachers, store, Mixup, figure."""

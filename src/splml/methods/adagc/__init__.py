"""AdaGC, a reconstruction: loss, early-learning indicator, stage switch, weight-EMA teacher, dual-EMA store and Mixup."""

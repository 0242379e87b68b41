// samples/Lesson/Device/Program.cs: the lesson's nightlight device in C#. Run: dotnet run --project samples/Lesson/Device
using Nightlight.Device;
using Nightlight.Mqtt;

var id = Environment.GetEnvironmentVariable("NIGHTLIGHT_ID") ?? "<ID>";
var broker = Environment.GetEnvironmentVariable("NIGHTLIGHT_BROKER") ?? "mqtt://localhost:1883";
var light = 100;  // stands in for the light sensor

// Task: connect your device to the broker (client id <ID>nightlight_client, topics <ID>/telemetry and <ID>/commands).
var options = new DeviceClientOptions { Id = id, Connection = MqttConnectionOptions.From(broker, id + "nightlight_client") };

// Task: handle commands. The SDK subscribes to <ID>/commands and calls this for each command.
await using var device = new DeviceClient(options, (command, _) =>
{
    Console.WriteLine($"Message received: {command}");
    Console.WriteLine(command.LedOn == true ? "LED on" : "LED off");
    return ValueTask.CompletedTask;
});
device.Start();
Console.WriteLine("MQTT connected!");

// Task: send telemetry, {"light": N} on <ID>/telemetry every 5 seconds.
while (true)
{
    Console.WriteLine($"Sending telemetry {{\"light\": {light}}}");
    await device.SendAsync("light", light, CancellationToken.None);
    await Task.Delay(TimeSpan.FromSeconds(5));
}

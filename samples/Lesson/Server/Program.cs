// samples/Lesson/Server/Program.cs: the lesson's server in C#. Run: dotnet run --project samples/Lesson/Server
using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Nightlight.Mqtt;

var id = Environment.GetEnvironmentVariable("NIGHTLIGHT_ID") ?? "<ID>";
var broker = Environment.GetEnvironmentVariable("NIGHTLIGHT_BROKER") ?? "mqtt://localhost:1883";

// Task: connect the server to the broker as <ID>nightlight_server.
await using var client = new ManagedMqttConnection(MqttConnectionOptions.From(broker, id + "nightlight_server"), NullLogger.Instance);

// Task: receive telemetry from <ID>/telemetry, and send a command back on <ID>/commands.
client.MessageReceived = async (topic, payload) =>
{
    var telemetry = JsonDocument.Parse(payload.ToArray()).RootElement;
    Console.WriteLine($"Message received: {telemetry}");

    var command = JsonSerializer.Serialize(new { led_on = telemetry.GetProperty("light").GetDouble() < 300 });
    Console.WriteLine($"Sending message: {command}");
    await client.TryPublishAsync(id + "/commands", System.Text.Encoding.UTF8.GetBytes(command));
};
await client.SubscribeAsync(id + "/telemetry", MQTTnet.Protocol.MqttQualityOfServiceLevel.AtMostOnce);
await client.StartAsync(CancellationToken.None);

await Task.Delay(Timeout.Infinite);
